from gptlab.cli import main

main()
