"""The Python scripts that deploy and launch send to a device (precheck, install, launch, process
group) parse as Python 3.9, the oldest a device may run. Deploying itself is in test_deploy.py.
"""

from __future__ import annotations


def test_device_scripts_parse_as_python_3_9() -> None:
    import ast

    from ftte_cli.fleet import deploy, launch

    for script in (deploy._PRECHECK, deploy._INSTALL, launch._LAUNCH, launch._GROUP):
        ast.parse(script, feature_version=(3, 9))
