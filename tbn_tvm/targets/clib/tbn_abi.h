/* tbn_abi.h - the few types TVM-generated kernels use, defined by tbn-tvm.
 *
 * TVM's C code generator emits every kernel with its packed calling convention:
 *     int32_t kernel(void *self, void *args, int32_t num_args, void *result)
 * where args is an array of tagged values each pointing at a DLTensor.  The kernels read only
 * the fields declared below (.type_index, .v_ptr, and a tensor's data/shape/strides/device),
 * and the driver in model.c builds these values with this same header, so the layout is
 * self-consistent; no TVM header or runtime library is needed on the device.
 */
#ifndef TBN_ABI_H_
#define TBN_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifndef TVM_DLL
#define TVM_DLL
#endif

/* Tag for "pointer to a DLTensor" (any value other than TVM's managed-tensor tag works). */
#define TBN_ARG_DLTENSOR_PTR 7

typedef struct {
  int32_t device_type;
  int32_t device_id;
} DLDevice;

typedef struct {
  uint8_t code; /* 0 int, 1 uint, 2 float */
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

typedef struct {
  void *data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t *shape;
  int64_t *strides; /* NULL: compact row-major */
  uint64_t byte_offset;
} DLTensor;

typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    double v_float64;
    void *v_ptr;
  };
} TVMFFIAny;

/* float16 tensors (TVM's C code calls the type "half"): IEEE binary16, which Arm GCC provides
 * as _Float16 with -mfp16-format=ieee (part of the library's build flags). */
#if defined(__FLT16_MAX__)
typedef _Float16 half;
#endif

/* Scratch memory for kernels that ask for it (a LIFO bump allocator in model.c). */
void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr);

#endif /* TBN_ABI_H_ */
