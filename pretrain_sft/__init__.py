"""Pretraining and SFT: from a folder of pictures to the base policy GRPO starts from.

    simplear-rl extract-tokens --images META --codec cosmos --codec_path DIR --resolution 512 --out CACHE
    simplear-rl pretrain --config recipes/simplear_0.5b/pretrain_512.yaml
    simplear-rl sft --config recipes/simplear_0.5b/sft_1024.yaml
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m pretrain_sft.train --config RECIPE

Modules: ``sources`` (reading META), ``images`` (open / crop / resize, skip reasons), ``cache``
(the token-cache folder, atomic publication), ``shards`` (per-rank parts while extracting),
``extract`` (the extraction command), ``sequences`` (training sequences and batches), ``loss``
(visual-slice next-token loss), ``trainer`` (the HF ``Trainer`` subclass), ``config`` (recipe
dataclasses), ``policy_init`` (the starting policy), ``train`` (the pretrain/sft commands) and
``demo_data`` (synthetic shapes with captions and reward metadata).

Submodules are imported on use, so ``import pretrain_sft`` stays cheap.
"""
