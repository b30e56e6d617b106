"""Training recipes for LLaVA-OneVision-2 on TRL + accelerate (`llava_onevision2.training`).

python -m llava_onevision2.training --config training/configs/<stage>.yaml [--key value ...]
python -m llava_onevision2.training.toy run --output runs/toy
"""
