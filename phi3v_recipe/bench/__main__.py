"""python -m phi3v_recipe.bench"""

from ..errors import run
from . import main

run(main)
