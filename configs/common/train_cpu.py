"""A short CPU schedule for the tiny models trained from scratch (GroupNorm everywhere).

4 images per batch without the scaling rule, 3000 iterations with steps at 75 % and 90 %, a
short warmup from 1 %, gradient clipping, checkpoints and evaluation every 500 iterations.
"""

from .train import train

train.max_iter = 3000
train.batch_size = 4
train.reference_batch_size = None
train.steps = (0.75, 0.9)
train.warmup_iters = 100
train.warmup_factor = 0.01
train.grad_clip = 10.0
train.checkpoint_period = 500
train.eval_period = 500
train.num_workers = 2
