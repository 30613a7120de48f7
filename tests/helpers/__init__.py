"""Test helpers, imported as `helpers.<module>` (pyproject puts tests/ on the path):

    sshd       real OpenSSH servers on loopback ports (`running_sshd`, keys, known_hosts)
    loopback   a real server on a loopback port, agents as real processes, tiny runs
    trainkit   `ftte train` as a subprocess: recipes, inventories, waiting, process groups
    tinymodel  a tiny torch model for engine tests
    testbed    the emulated testbed (`Testbed`, `start_testbed`)
    coordkit   a coordinator on a tiny model and deterministic fake updates
    simkit     the tiny simulator recipe

Fixtures live in tests/conftest.py, not here.
"""
