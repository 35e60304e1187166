"""The search presets: one per paper (each its CIFAR-10 recipe, cited file by file), the source's
method (the default), and the CPU budgets. A preset is a dict of option values over the defaults of
:class:`fastnas.search.options.SearchConfig`."""

from __future__ import annotations

# DrNAS' DARTS-space candidates (DARTS-space/genotypes.py PRIMITIVES): DARTS' without 'none'.
DRNAS_PRIMITIVES = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
                    "dil_conv_5x5"]

_ONE_STAGE = {"cells": [8], "channels": [16], "ops_kept": [8], "skip_dropout": [0.0], "partial_channels": [1],
              "max_skip": -1}

PRESETS: dict[str, dict] = {
    # The default, the source's method: P-DARTS' stages (cells 5/11/17, C=16, ops 8/5/3, skip dropout
    # 0/0.4/0.7 as the paper's text, 25 epochs of which 10 warm-up) with GDAS' sampler: hard Gumbel, arch
    # lr 3e-4, tau 10 -> 0.1, and GDAS' order (the weight step first; P-DARTS' code steps the architecture
    # first, which the pdarts preset follows).
    "progressive": {},
    # P-DARTS itself (chenxin061/pdarts train_search.py): softmax mixture (no temperature), arch lr 6e-4.
    # Its README's search command sets skip dropout 0.1/0.4/0.7 (the paper's text: 0.0/0.4/0.7, which the
    # default keeps); this preset reproduces the code, so it takes the command's.
    "pdarts": {"sampler": "softmax", "arch_lr": 6e-4, "arch_first": True, "skip_dropout": [0.1, 0.4, 0.7]},
    # The source's literal reading of "[9, 13, 19]" as per-stage widths.
    "patent": {"channels": [9, 13, 19]},
    # The single-stage methods: one supernet of 8 cells, C=16, all 8 ops, no skip cap, no stage dropout.
    # DARTS (quark0/darts cnn/train_search.py): 50 epochs, batch 64, SGD 0.025 -> 0.001, Adam 3e-4
    # (betas 0.5/0.999, wd 1e-3), softmax, arch step from the first epoch, no arch-gradient clip.
    "darts": {**_ONE_STAGE, "epochs": [50], "warmup_epochs": [0], "batch_size": 64, "lr": 0.025, "lr_min": 0.001,
              "sampler": "softmax", "arch_lr": 3e-4, "arch_grad_clip": 0.0, "arch_first": True},
    # DARTS second order: the same, with the unrolled architecture gradient (--unrolled).
    "darts2": {**_ONE_STAGE, "epochs": [50], "warmup_epochs": [0], "batch_size": 64, "lr": 0.025,
               "lr_min": 0.001, "sampler": "softmax", "arch_lr": 3e-4, "arch_grad_clip": 0.0, "arch_order": 2,
               "arch_first": True},
    # PC-DARTS (yuhuixu1993/PC-DARTS train_search.py): K=4, edge normalization, batch 256, SGD 0.1 -> 0,
    # Adam 6e-4, architecture from epoch 15 of 50.
    "pcdarts": {**_ONE_STAGE, "epochs": [50], "warmup_epochs": [15], "batch_size": 256, "lr": 0.1,
                "lr_min": 0.0, "sampler": "softmax", "arch_lr": 6e-4, "arch_grad_clip": 0.0,
                "partial_channels": [4], "edge_norm": True, "arch_first": True},
    # GDAS on the DARTS space (D-X-Y/AutoDL-Projects scripts-search/NASNet-space-search-by-GDAS.sh with
    # configs/search-opts/GDAS-NASNet-CIFAR.config and search-archs' C=16, N=2): 6 cells (N=2 per stage),
    # 250 epochs, batch 256, SGD 0.025 -> 0.001 cosine, Nesterov momentum 0.9, weight decay 5e-4; Adam 3e-4
    # (wd 1e-3); hard Gumbel, tau 10 -> 0.1; only the sampled op runs, in both steps (MixedOp.forward_gdas);
    # BN + ReLU before the pooling, no BN after pooling candidates; per node the 2 strongest (op, input)
    # pairs (search_model_gdas_nasnet.py). Add --fixed-reduction gdas_frc for its FRC setting.
    "gdas": {**_ONE_STAGE, "cells": [6], "epochs": [250], "warmup_epochs": [0], "batch_size": 256, "lr": 0.025,
             "lr_min": 0.001, "nesterov": True, "weight_decay": 5e-4, "sampler": "gumbel-hard", "arch_lr": 3e-4,
             "arch_grad_clip": 0.0, "straight_through": "sampled", "pool_bn": False, "final_bn_relu": True,
             "derivation": "gdas"},
    # DrNAS (xiangning-chen/DrNAS DARTS-space/train_search.py, progressive): 20 cells, C=36, two stages of 25
    # epochs (10 warm-up each: `if epoch >= 10`), its 7 ops (genotypes.py: no 'none') kept 7 -> 4
    # (num_keeps), partial channels K 6 -> 4 (ks), batch 64, SGD 0.1 -> 0, Adam 6e-4; the Dirichlet
    # sampler regularised by model_search.py's default reg_type 'l2' (Adam weight decay 1e-3, no KL; its
    # 'kl' form is --dirichlet-anchor 1e-3 --arch-weight-decay 0); no BN after pooling; derivation from
    # softmax(alpha) (genotype()); the architecture step first; one network through both stages (pruned,
    # widened by net2wider, momentum, Adam and the 50-epoch cosine carried on).
    "drnas": {"cells": [20, 20], "channels": [36, 36], "ops_kept": [7, 4], "skip_dropout": [0.0, 0.0],
              "primitives": DRNAS_PRIMITIVES, "epochs": [25, 25], "warmup_epochs": [10, 10],
              "partial_channels": [6, 4], "batch_size": 64, "lr": 0.1, "lr_min": 0.0, "sampler": "dirichlet",
              "arch_lr": 6e-4, "arch_grad_clip": 0.0, "arch_weight_decay": 1e-3, "dirichlet_anchor": 0.0,
              "max_skip": -1, "arch_first": True, "pool_bn": False, "derive_from": "softmax",
              "stage_transition": "continue"},
    # About 6 minutes on a 2-core CPU (360 s measured alone), on the embedded data, and the search
    # rejects noise (benchmarks/README.md, issue 23). Rules from the budget, not from the data:
    # - softmax: a single-path (gumbel-hard) supernet does not train in the few hundred steps such a
    #   budget holds, while softmax trains every candidate each step and learns like a fixed network;
    # - one network through the stages (DrNAS' progressive learning): at a few hundred steps the weights
    #   a stage trained are too dear to throw away, so one warm-up (3 of 8 epochs) serves all stages and
    #   the architecture's steps add up instead of restarting; equal depth (4 cells) in every stage;
    # - 1000 + 1000 images in batches of 64: a noise candidate's architecture gradient is pure variance,
    #   and half of that per step left Adam moving most edges by chance;
    # - the arch lr from the budget (arch_travel / architecture steps);
    # - at most 2 parameter-free ops in the derived normal cell (the skip cap's rule for pooling too:
    #   with the skip cap alone these settings left 5 of 8 to pooling on the embedded data; the previous
    #   quick preset left 6 of 8 on a real image folder).
    # Step costs on a CPU are per op call, not per channel, so width is cheap and depth/ops are not.
    "quick": {
        "cells": [4, 4, 4], "channels": [8, 8, 8], "epochs": [4, 2, 2], "warmup_epochs": [3, 0, 0],
        "batch_size": 64, "embedded_size": 2000, "lr": 0.05, "sampler": "softmax", "arch_travel": 2.0,
        "stage_transition": "continue", "max_param_free": 2,
        "derived_eval_images": 500, "eval_channels": 8, "eval_layers": 5,  # the quick retraining's network
    },
    # Seconds on a laptop CPU on the embedded data; still all three stages, pruning and derivation.
    "smoke": {
        "cells": [3, 4, 5], "channels": [4, 4, 6], "epochs": [2, 2, 2], "warmup_epochs": [1, 1, 1],
        "batch_size": 32, "embedded_size": 768, "arch_lr": 3e-3,
        "derived_eval_images": 256, "eval_channels": 8, "eval_layers": 5,  # the smoke retraining's network
    },
}
