"""The base layer every other package builds on: errors, seeding, checkpoint-safe state, run-folder I/O.

It imports nothing else from gbmr, so agents, memories, nets, envs and runners depend on it and ``experiment``
(train, sweep, pretraining) sits only at the top of the import graph.
"""
