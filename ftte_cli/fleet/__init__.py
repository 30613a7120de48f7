"""Reaching the fleet: SSH sessions with checked host keys and deadlines (ssh.py), the recap
every fleet command prints (recap.py), and device profiling (profile.py)."""
