"""The embedded toy world: requests with known ground truth, a pretraining corpus that makes a
helpful-only base model, held-out evaluation slices and the judge that scores responses.

``world`` generates the requests and splits them by entity; ``corpus`` writes the pretraining
documents and prompt sets; ``judge`` scores a response against the ground truth (evaluation and
the "human feedback" baseline only, never inside the CAI loop).
"""
