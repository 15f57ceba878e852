#ifndef CUDEV_SHIM_H
#define CUDEV_SHIM_H

#include <libudev.h>
// The monitor's reader thread is woken through an eventfd.
#include <sys/eventfd.h>

#endif
