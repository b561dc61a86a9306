"""What each command does besides parsing its options, so that cli/ stays thin and other
front ends (torchrun workers, notebooks through mathrl.api) can call the same functions.

    start.py     the config, the backend check, the ranks, threads and seeds, the run dir
    train.py     train, expert-iter, sft and the buffer commands: start or resume, train,
                 then the summary and report
    evaluate.py  eval, eval suites, probe and score
"""

from mathrl.runs.evaluate import run_eval
from mathrl.runs.start import load_run_config
from mathrl.runs.train import run_training

__all__ = ["load_run_config", "run_eval", "run_training"]
