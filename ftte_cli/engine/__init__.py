"""The pure engine: data, models, memory accounting, sparse plans, strategies, the coordinator.

Imports only torch, safetensors and the standard library on the device path (agent + train):
no time, asyncio, paramiko, rich or numpy there. Time and randomness come in as arguments.
"""
