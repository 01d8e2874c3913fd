from services.caseload.app import definition
from services.kit.runtime import main

main(definition)
