"""VGG19's weights: the weights as stylerun holds them (`vgg19`), the bundled network (`bundled`), one
reader per file format (`torchfile`, `matconvnet`, `keras`, `tfnpy`, `caffe`) behind one dispatcher
(`formats`), the one restricted unpickler (`unpickle`), and the caps on what a weights file may make
stylerun read (`bounds`)."""
