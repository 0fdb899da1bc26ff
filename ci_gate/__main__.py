from ci_gate.cli import main

main()
