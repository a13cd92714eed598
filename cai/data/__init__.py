"""Data sources and batching. Every source yields token ids; batching is a pure function of the
step so a resumed run reproduces the data order exactly."""
