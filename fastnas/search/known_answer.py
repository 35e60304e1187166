"""The known-answer search (RobustDARTS' S4-style space): over {sep_conv_3x3, noise}, a search that
searches prefers the convolution. Gaussian noise carries no information about the input, so an
architecture step that scores it no worse than a trained convolution is not measuring anything.

Its budget lives here, once, for the test (tests/test_known_answer.py) and the benchmark over seeds
(benchmarks/known_answer.py): one stage of 4 cells (two normal cells feed the normal alphas), C=8,
1000 + 1000 embedded images in batches of 64, 7 warm-up epochs so the convolutions carry signal before
the architecture moves (a supernet near chance pushes the architecture towards noise), then 5 search
epochs with --arch-travel 4. gumbel-hard trains one path per step, so its supernet gets twice the
epochs (14 + 10).
"""

from __future__ import annotations

ARGS = ["--preset", "smoke", "--primitives", "sep_conv_3x3", "noise", "--ops-kept", "2", "--cells", "4",
        "--channels", "8", "--skip-dropout", "0", "--embedded-size", "2000", "--batch-size", "64", "--lr", "0.1",
        "--epochs", "12", "--warmup-epochs", "7", "--arch-travel", "4.0", "--no-plots", "--derived-eval-images", "0"]
# A single-path supernet learns about half as fast per step as a mixture (every edge is noise about half
# the time until the architecture moves): at 12 epochs gumbel-hard's supernet stays near chance.
LONGER = {"gumbel-hard": ["--epochs", "24", "--warmup-epochs", "14"]}
BAR = 12  # of the 14 normal-cell edges


def search_args(sampler: str) -> list[str]:
    """The known-answer search's command line for `sampler` (without --out / --seed)."""
    return [*ARGS, "--sampler", sampler, *LONGER.get(sampler, [])]


def edges_preferring_convolution(metrics: dict) -> int:
    """Normal-cell edges whose sep_conv_3x3 probability beats noise's, from one epoch's metrics line."""
    entry = metrics["op_probabilities"]["normal"]
    return sum(p[names.index("sep_conv_3x3")] > p[names.index("noise")]
               for names, p in zip(entry["primitives"], entry["p"], strict=True))
