"""python -m phi3v_recipe.bench"""

from . import main

main()
