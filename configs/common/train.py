"""detectron2's "1x" COCO schedule as a `TrainSettings`: 90k iterations of 16 images.

SGD with momentum 0.9, base LR 0.02 for a batch of 16 with linear warmup over 1000 iterations,
LR x0.1 at 60k and 80k, weight decay 1e-4. `reference_batch_size=16` applies the linear scaling
rule when `batch_size` differs (batch 2 on one GPU: LR 0.0025, 720k iterations, steps scaled).
For a "3x" schedule: `train.max_iter = 270000` and `train.steps = (210000, 250000)`.
"""

from detforge.config import LazyCall as L
from detforge.engine.recipe import TrainSettings

train = L(TrainSettings)(
    output_dir="output",
    max_iter=90000,
    batch_size=16,
    reference_batch_size=16,
    optimizer="SGD",
    base_lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="multistep",
    steps=(60000, 80000),
    gamma=0.1,
    warmup_iters=1000,
    warmup_factor=0.001,
    warmup_method="linear",
    checkpoint_period=5000,
    eval_period=0,
    num_workers=4,
)
