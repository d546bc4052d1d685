"""What training and evaluation both need at run time, below both: the precision a run computes in
(`precision`), the checkpoint folders on disk (`checkpoint`) and opening a trained run (`runs`)."""
