from kdistill.cli import console

console()
