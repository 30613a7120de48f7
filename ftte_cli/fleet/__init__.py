"""Reaching the fleet: SSH sessions with checked host keys and deadlines (the ssh/ package:
results, hostkeys, sessions, pool), device profiling (profile.py), deploy, launch and ad-hoc
commands; the recap every fleet command prints is rendered by ui/recap.py."""
