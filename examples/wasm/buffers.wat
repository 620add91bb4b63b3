;; buffers: the array and string ABI of the wasm adapter, by example.
;;
;;   python -m corral.adapters.wasm --module buffers=examples/wasm/buffers.wat
;;   nats req corral.mod.buffers.compute \
;;     '{"function": "greet", "arrays": [{"type": "utf8", "data": "Ada"}], "result": {"type": "utf8"}}'
;;
;; Exports (len is a count of elements; of bytes for strings):
;;
;;   reverse_1/2/4/8(ptr, len)      reverse elements of that many bytes in place (u8/i8, i16/u16,
;;                                  i32/u32/f32, i64/u64/f64): a round trip that keeps values only
;;                                  if host and guest agree on the element size
;;   sum_u8(ptr, len) -> i32        sum_i32(ptr, len) -> i64        sum_i64(ptr, len) -> i64
;;   sum_f32(ptr, len) -> f32       sum_f64(ptr, len) -> f64
;;   upper(ptr, len)                ASCII letters of a UTF-8 string to upper case, in place
;;   greet(ptr, len) -> (ptr, len)  a new string "hello, <name>!" the host reads, then frees
;;   scale(in, n, out, m, factor: f64) -> i32
;;                                  out[i] = in[i] * factor over f64s, for i < min(n, m); returns
;;                                  the count (an output buffer, then a scalar argument)
;;   __wbindgen_malloc(size, align) -> ptr      __wbindgen_free(ptr, size, align)
;;                                  wasm-bindgen's allocator names, over physics.wat's allocator
;;   live_allocations() -> i32
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "hello, ")

  (global $heap_base i32 (i32.const 1024))
  (global $heap_top (mut i32) (i32.const 1024))
  (global $free_list (mut i32) (i32.const 0))
  (global $live (mut i32) (i32.const 0))

  (func $reverse (param $ptr i32) (param $len i32) (param $width i32)
    (local $lo i32) (local $hi i32) (local $k i32) (local $t i32)
    (if (i32.lt_u (local.get $len) (i32.const 2)) (then (return)))
    (local.set $lo (local.get $ptr))
    (local.set $hi
      (i32.add (local.get $ptr)
               (i32.mul (i32.sub (local.get $len) (i32.const 1)) (local.get $width))))
    (block $done
      (loop $pair
        (br_if $done (i32.ge_u (local.get $lo) (local.get $hi)))
        (local.set $k (i32.const 0))
        (block $swapped
          (loop $byte
            (br_if $swapped (i32.ge_u (local.get $k) (local.get $width)))
            (local.set $t (i32.load8_u (i32.add (local.get $lo) (local.get $k))))
            (i32.store8 (i32.add (local.get $lo) (local.get $k))
                        (i32.load8_u (i32.add (local.get $hi) (local.get $k))))
            (i32.store8 (i32.add (local.get $hi) (local.get $k)) (local.get $t))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $byte)))
        (local.set $lo (i32.add (local.get $lo) (local.get $width)))
        (local.set $hi (i32.sub (local.get $hi) (local.get $width)))
        (br $pair))))

  (func (export "reverse_1") (param i32 i32) (call $reverse (local.get 0) (local.get 1) (i32.const 1)))
  (func (export "reverse_2") (param i32 i32) (call $reverse (local.get 0) (local.get 1) (i32.const 2)))
  (func (export "reverse_4") (param i32 i32) (call $reverse (local.get 0) (local.get 1) (i32.const 4)))
  (func (export "reverse_8") (param i32 i32) (call $reverse (local.get 0) (local.get 1) (i32.const 8)))

  (func (export "sum_u8") (param $ptr i32) (param $len i32) (result i32)
    (local $p i32) (local $end i32) (local $acc i32)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (i32.mul (local.get $len) (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $acc (i32.add (local.get $acc) (i32.load8_u (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $acc))

  (func (export "sum_i32") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32) (local $end i32) (local $acc i64)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (i32.mul (local.get $len) (i32.const 4))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_s (i32.load (local.get $p)))))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (br $next)))
    (local.get $acc))

  (func (export "sum_i64") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32) (local $end i32) (local $acc i64)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (i32.mul (local.get $len) (i32.const 8))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $acc (i64.add (local.get $acc) (i64.load (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (br $next)))
    (local.get $acc))

  (func (export "sum_f32") (param $ptr i32) (param $len i32) (result f32)
    (local $p i32) (local $end i32) (local $acc f32)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (i32.mul (local.get $len) (i32.const 4))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $acc (f32.add (local.get $acc) (f32.load (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (br $next)))
    (local.get $acc))

  (func (export "sum_f64") (param $ptr i32) (param $len i32) (result f64)
    (local $p i32) (local $end i32) (local $acc f64)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (i32.mul (local.get $len) (i32.const 8))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $acc (f64.add (local.get $acc) (f64.load (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (br $next)))
    (local.get $acc))

  (func (export "upper") (param $ptr i32) (param $len i32)
    (local $p i32) (local $end i32) (local $c i32)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (local.get $p) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next))))

  (func (export "greet") (param $ptr i32) (param $len i32) (result i32 i32)
    (local $out i32) (local $n i32)
    (local.set $n (i32.add (local.get $len) (i32.const 8))) ;; "hello, " + name + "!"
    (local.set $out (call $alloc (local.get $n)))
    (if (i32.eqz (local.get $out)) (then unreachable))
    (memory.copy (local.get $out) (i32.const 16) (i32.const 7))
    (memory.copy (i32.add (local.get $out) (i32.const 7)) (local.get $ptr) (local.get $len))
    (i32.store8 (i32.add (local.get $out) (i32.add (local.get $len) (i32.const 7))) (i32.const 33))
    (local.get $out)
    (local.get $n))

  (func (export "scale") (param $in i32) (param $n i32) (param $out i32) (param $m i32)
                         (param $factor f64) (result i32)
    (local $i i32) (local $count i32) (local $off i32)
    (local.set $count (select (local.get $n) (local.get $m) (i32.lt_u (local.get $n) (local.get $m))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $off (i32.shl (local.get $i) (i32.const 3)))
        (f64.store (i32.add (local.get $out) (local.get $off))
                   (f64.mul (f64.load (i32.add (local.get $in) (local.get $off))) (local.get $factor)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $count))

  ;; --- allocator ---------------------------------------------------------------------------
  ;; Payloads are 8-aligned, enough for every element type, so `align` is not needed.
  (func (export "__wbindgen_malloc") (param $size i32) (param $align i32) (result i32)
    (call $alloc (local.get $size)))

  (func (export "__wbindgen_free") (param $ptr i32) (param $size i32) (param $align i32)
    (call $dealloc (local.get $ptr)))

  (func $alloc (param $size i32) (result i32)
    (local $need i32) (local $prev i32) (local $block i32) (local $end i32) (local $have i32)
    (if (i32.gt_u (local.get $size) (i32.const 0x7fff0000)) (then (return (i32.const 0))))
    (local.set $need (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8)))
    (if (i32.eqz (local.get $need)) (then (local.set $need (i32.const 8))))
    ;; first fit on the free list
    (local.set $block (global.get $free_list))
    (block $none
      (loop $scan
        (br_if $none (i32.eqz (local.get $block)))
        (if (i32.ge_u (i32.load (local.get $block)) (local.get $need))
          (then
            (if (local.get $prev)
              (then (i32.store offset=4 (local.get $prev) (i32.load offset=4 (local.get $block))))
              (else (global.set $free_list (i32.load offset=4 (local.get $block)))))
            (return (call $claim (local.get $block)))))
        (local.set $prev (local.get $block))
        (local.set $block (i32.load offset=4 (local.get $block)))
        (br $scan)))
    ;; a new block from the top of the heap, growing memory if it does not fit
    (local.set $block (global.get $heap_top))
    (local.set $end (i32.add (local.get $block) (i32.add (local.get $need) (i32.const 8))))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 0xffff))
                           (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.store (local.get $block) (local.get $need))
    (global.set $heap_top (local.get $end))
    (call $claim (local.get $block)))

  (func $claim (param $block i32) (result i32)
    (i32.store (local.get $block) (i32.or (i32.load (local.get $block)) (i32.const 1)))
    (global.set $live (i32.add (global.get $live) (i32.const 1)))
    (i32.add (local.get $block) (i32.const 8)))

  (func $dealloc (param $ptr i32)
    (local $block i32)
    (if (i32.eqz (local.get $ptr)) (then (return)))
    (local.set $block (i32.sub (local.get $ptr) (i32.const 8)))
    (if (i32.or
          (i32.or (i32.lt_u (local.get $block) (global.get $heap_base))
                  (i32.ge_u (local.get $ptr) (global.get $heap_top)))
          (i32.and (local.get $ptr) (i32.const 7)))
      (then unreachable)) ;; not a pointer malloc handed out
    (if (i32.eqz (i32.and (i32.load (local.get $block)) (i32.const 1)))
      (then unreachable)) ;; already free
    (i32.store (local.get $block) (i32.and (i32.load (local.get $block)) (i32.const -2)))
    (i32.store offset=4 (local.get $block) (global.get $free_list))
    (global.set $free_list (local.get $block))
    (global.set $live (i32.sub (global.get $live) (i32.const 1))))

  (func (export "live_allocations") (result i32)
    (global.get $live))
)
