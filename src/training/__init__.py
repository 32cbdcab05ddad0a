"""The parts of :class:`trainer.Trainer`, each on its own.

- :mod:`training.step`: one optimisation step and the rules that skip a bad batch.
- :mod:`training.evaluation`: the model over one test set, scored image by image.
- :mod:`training.tables`: a test set's score line, the text tables of ``--test_only`` and ``--compare_bicubic``.
- :mod:`training.state`: the checkpoint files of an epoch and the training-state format a run resumes from.
- :mod:`training.resume`: loading a run back, for ``--resume`` or ``--test_only``, and its log lines.
- :mod:`training.failures`: what stops a run or an evaluation, and the one line each gets.
- :mod:`training.interrupts`: Ctrl-C held while a loader worker hands a batch over.
- :mod:`training.optim`: the optimizer and the learning-rate schedule.
- :mod:`training.lcoa_monitor`: the LCoA statistics of every epoch.
- :mod:`training.tensorboard_log`: the ``--tensorboard`` events.

The run folder and its files (:mod:`training.run_folder`, EDSR's ``checkpoint``) with its figures
(:mod:`training.plots`) and result images (:mod:`training.images`); which run flags go together
(:mod:`training.run_flags`, checked with the options).
"""
