"""Generation quality: per-sample numbers on the generator's raw output, the reject-and-regenerate
filter, and the set metrics of the paper's Table IV (FID, KID, CLIPScore, SSIM, PSNR)."""
