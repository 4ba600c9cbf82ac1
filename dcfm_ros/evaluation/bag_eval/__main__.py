"""`python -m dcfm_ros.evaluation.bag_eval` = dcfm-bag-eval."""

import sys

from dcfm_ros.evaluation.bag_eval.cli import main

sys.exit(main())
