// pool2d.cpp — 2-D max / average / adaptive pooling (skeleton; being written).
#include "common.h"
#include "isa.h"
