"""The learning-rate schedules of the training CLI (--schedule): none, multistep (x gamma at
each milestone epoch), step (x gamma every step_size epochs), cosine (annealed to 0 over the
epochs)."""
import torch

__all__ = ["SCHEDULES", "make_scheduler"]

SCHEDULES = ("multistep", "step", "cosine", "none")


def make_scheduler(optim, opt):
    """The learning-rate schedule of the `optim` section for the optimiser `opt`."""
    lr_scheduler = torch.optim.lr_scheduler
    if optim.schedule == "multistep":
        return lr_scheduler.MultiStepLR(opt, optim.milestones, optim.gamma)
    if optim.schedule == "step":
        return lr_scheduler.StepLR(opt, optim.step_size, optim.gamma)
    if optim.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, optim.epochs)
    return lr_scheduler.LambdaLR(opt, lambda e: 1.0)
