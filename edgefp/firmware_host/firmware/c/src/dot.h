/* int8 dot products of the fast kernels (simd.h), each product as TFLite's (x + offset) * w with
 * int32 wrapping sums: a vector of int8 inputs against rows of weights, or two columns of inputs
 * already widened to int16 with their offset (efp_column_q15) against two rows. */
#ifndef EFP_DOT_H
#define EFP_DOT_H

#include <stdint.h>

/* sums[r] = x.row r over k values, the offset added to each input, for `rows` rows of k weights (w, one
 * row after another) */
void efp_dot_rows(const int8_t *x, const int8_t *w, int32_t k, int32_t rows, int32_t offset, int32_t *sums);

/* Two columns of k inputs widened to int16 with their offset, interleaved for efp_dot_2x2_q15: each
 * group of 4 values as 8 int16, the first column's (0 2 1 3: one word pairs with SXTB16 of a word
 * of weights, bytes 0, 2 and 1, 3) then the second's; the k % 4 last values of each after them.
 * n values of src into column j at value positions from..from + n - 1, or 0 where src is NULL (the
 * filter overhangs the input: TFLite adds nothing there). col: 4-byte aligned, 2 * k values. */
void efp_column_q15(const int8_t *src, int32_t n, int32_t offset, int16_t *col, int j, int32_t from, int32_t k);

/* A column of k values in natural order (offset added) into column j at col. */
void efp_interleave_q15(const int16_t *values, int16_t *col, int j, int32_t k);

/* The two columns at col against each of `rows` rows of k weights (w, one row after another):
 * sums[r] = c0.row r, sums[rows + r] = c1.row r. */
void efp_dot_rows_q15(const int16_t *col, const int8_t *w, int32_t k, int32_t rows, int32_t *sums);

#endif
