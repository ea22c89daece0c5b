"""`autoattack`: the module name robustbench imports (`from autoattack import AutoAttack`,
`from autoattack.state import EvaluationState`) for the authors' AutoAttack, which PyPI ships only as
the distribution `pyautoattack` under the module name `pyautoattack` (the git repository installs it
as `autoattack`; PyPI has no distribution of that name). dfrd-bench installs this alias so that a plain
`import robustbench` works: it makes `autoattack` and `autoattack.state` the very modules of
pyautoattack. An `autoattack` installed from the authors' repository comes first on the path and is
used instead.
"""
import sys

import pyautoattack
import pyautoattack.state

sys.modules[__name__] = pyautoattack
sys.modules[__name__ + ".state"] = pyautoattack.state
