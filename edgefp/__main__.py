from edgefp.cli import console

console()
