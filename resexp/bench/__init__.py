"""`resexp bench`: how fast resexp trains, timed on the objects and processes that train.

- single.py    one process, one device: the trainer's step (resexp.engine.step.TrainStep) in each
               precision against the usual DataLoader recipe (reference.py), and the memory a step
               keeps (memory.py)
- runs.py      `--runs K`: K runs of one architecture one after another, as K processes, and as K
               models in lock-step (lockstep.py: LockstepStep, the step's interface for K models)
- sweep.py     `--sweep`: the real sweep's processes for a window of time; the whole sweep's wall
               time projected from it
- timing.py    what the step benches share: pipelines, interleaved timed rounds, their statistics
- report.py    where a report goes (never over an older one without --force), JSON and Markdown

The engine never imports this package: benchmarks use the trainer's objects, not the other way.
"""
