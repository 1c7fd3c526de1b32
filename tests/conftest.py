import os, signal
os.environ.setdefault('MPLBACKEND', 'Agg')

# A test run started in the background of a non-interactive shell (`pytest &`, nohup, some CI runners) inherits
# SIGINT ignored, and so does every process it starts: the Ctrl-C tests would then wait for an interrupt that never
# comes. A terminal's Ctrl-C reaches a foreground run; give this one Python's own handler, so its children get it too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN: signal.signal(signal.SIGINT, signal.default_int_handler)
