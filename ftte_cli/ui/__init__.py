"""What the terminal and image files show: the fleet recap (recap.py), run tables and PNGs
(report.py, plots.py), the live dashboard (dashboard.py) and the TensorBoard export. Runs are
read by rundir/reader.py; nothing here writes a run directory."""
