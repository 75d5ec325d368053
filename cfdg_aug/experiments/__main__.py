from cfdg_aug.experiments.cli import main

if __name__ == "__main__":
    main()
