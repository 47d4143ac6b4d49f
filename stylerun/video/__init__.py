"""Video: frames in and out, optical flow, and the frame-by-frame run with temporal consistency."""
