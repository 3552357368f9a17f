"""The exit codes of every megaindex command, in one table (launchers and job scripts read them).

OK (0) the work is done. FAILED (1) the work ran into bad input data (a converter's or the
preprocessor's input, named in a one-line error) or a parity check over its tolerance.
BAD_USAGE (2) the command line or the config cannot run (a one-line error naming the field;
nothing was done). NAN_STOP (3) `train.nan_policy=stop` met a non-finite loss or gradient norm.
PREEMPTED (75) EX_TEMPFAIL from sysexits.h, "temporary failure; the user is invited to retry":
stopped by a signal with a checkpoint, and the same command resumes (launch/ requeues on it).
"""

OK = 0
FAILED = 1
BAD_USAGE = 2
NAN_STOP = 3
PREEMPTED = 75
