"""Repair: fine-tune a backdoored prompt learner with its reconstructed trigger, then verify again.

- :mod:`ci_gate.repair.core`: the building blocks (clean-data loading and split, triggered copies
  with true labels, fine-tuning; held-out accuracy and trigger ASR are ci_gate.accuracy's);
- :mod:`ci_gate.repair.flow`: ``ci-gate repair`` (verify, repair, re-verify, write or refuse);
- :mod:`ci_gate.repair.evaluate`: the benchmark's measurement with the attacker's real trigger
  and the paper's controls.

Nothing is imported here: the CLI registers ``repair`` without loading torch.
"""
