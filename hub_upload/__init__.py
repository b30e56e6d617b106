"""Export, conversion, Hub upload and the demo (`llava_onevision2.hub_upload`).

python -m llava_onevision2.hub_upload export OUTPUT --source CHECKPOINT
python -m llava_onevision2.hub_upload push FOLDER REPO_ID [--dry-run]
python -m llava_onevision2.hub_upload convert {release,encoder-plus-llm} ...
python -m llava_onevision2.hub_upload demo [--model CHECKPOINT] [--video VIDEO]
"""
