"""`python -m llava_onevision2.training --config RECIPE.yaml [--key value ...]`"""

import sys

from .sft import main

sys.exit(main())
