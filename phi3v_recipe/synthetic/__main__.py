from ..errors import run
from . import main

run(main)
