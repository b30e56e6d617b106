"""Training recipes for LLaVA-OneVision-2 on TRL + accelerate (`llava_onevision2.training`)."""
