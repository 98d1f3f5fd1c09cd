# PYTHONSTARTUP of the notebook kernels run_all.py starts: every cell is a timed step from the
# first one on (busi_study.timing). Runs in the notebook's namespace, so it defines no name.
__import__("busi_study.timing").timing.kernel_startup()
