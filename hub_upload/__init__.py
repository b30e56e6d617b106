"""Export, conversion and Hub upload (`llava_onevision2.hub_upload`). The demo lives in `llava_onevision2.demo`.

python -m llava_onevision2.hub_upload export OUTPUT --source CHECKPOINT
python -m llava_onevision2.hub_upload push FOLDER REPO_ID [--dry-run]
python -m llava_onevision2.hub_upload convert {release,encoder-plus-llm} ...
"""
