from services.kit.runtime import main
from services.roster.app import definition

main(definition)
