"""Settings every test process shares, children included.

New key files and sealed secrets are written at the least KDF cost a file may declare (scrypt
N = 2^15 instead of the default 2^17, keystore.new_file_cost): four times faster to write and to
load, which takes about a fifth off the suite's time on a 2-core machine. The default cost has its
own tests (test_keystore.py, test_cli.py::test_info), which unset the variable.
"""
import os

os.environ.setdefault('TENSORGUARD_SCRYPT_LOG2_N', '15')
