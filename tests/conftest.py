import torch

# Small networks run fastest single-threaded, and the suite shares 2 cores (see TrainConfig.threads).
torch.set_num_threads(1)
