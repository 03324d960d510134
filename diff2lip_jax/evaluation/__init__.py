"""Evaluation of lip-sync videos as in the Diff2Lip paper: FID, SSIM, PSNR, LMD, LSE-C, LSE-D.

Modules:
  metrics     the metrics on arrays (dm-pix PSNR/SSIM, Fréchet distance, LMD, LSE offset search)
  fid         pool3 features of pytorch-fid's InceptionV3 (`models/inception.py`)
  lse         syncnet_python's LSE-C / LSE-D pipeline (`models/syncnet.py`)
  landmarks   dlib 68-point landmarks (face_recognition_models) for LMD
  filelists   upstream's `<audio> <video>` evaluation lists
  job         the evaluation job behind `python -m launch.evaluate`
  parallel    1-D device mesh over this host's devices
  debug_data  a tiny synthetic clip set for the debug job and CI
"""
