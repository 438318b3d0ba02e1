//! How many blocks of a kernel one SM holds at once, from the kernel's registers per thread,
//! its threads per block and its shared memory per block: the arithmetic of the CUDA
//! occupancy calculator, as `cuda_occupancy.h` (CUDA 13.0) writes it for compute capability
//! 8.0 and 9.0, with the default shared-memory carveout (all of it usable as shared memory).
//!
//! - Registers go to warps in units of 256 (a thread's count rounded up to a multiple of 8,
//!   times 32 threads), from four sub-partitions of 16384 registers each: a warp lives in one
//!   sub-partition, so the warps an SM holds are 4 x (16384 / registers per warp), which can
//!   be fewer than 65536 / registers per warp. A block whose warps, rounded up to a multiple
//!   of 4, need more than 65536 registers cannot launch at all.
//! - Shared memory: the block's static plus dynamic bytes plus 1024 bytes the system reserves
//!   per block, rounded up to 128 bytes, out of 167936 bytes per SM (sm_80) or 233472 (sm_90);
//!   a block may use at most 166912 (sm_80) or 232448 bytes (sm_90), after opting in above
//!   48 KiB.
//! - At most 64 warps (2048 threads) and 32 blocks per SM, and 1024 threads per block.

/// The per-SM limits of one architecture that occupancy depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchLimits {
    /// `sm_80`, `sm_90`.
    pub arch: &'static str,
    /// 32-bit registers per SM.
    pub registers_per_sm: u32,
    /// Register file sub-partitions per SM; a warp's registers come from one of them.
    pub sub_partitions: u32,
    /// Registers are allocated to a warp in multiples of this.
    pub register_unit: u32,
    /// The most registers one thread may use.
    pub max_registers_per_thread: u32,
    /// Resident warps per SM at most.
    pub max_warps_per_sm: u32,
    /// Resident blocks per SM at most.
    pub max_blocks_per_sm: u32,
    /// Threads per block at most.
    pub max_threads_per_block: u32,
    /// Shared memory per SM (the largest carveout).
    pub shared_per_sm: u32,
    /// Shared memory one block may use (static + dynamic), after opting in above 48 KiB.
    pub shared_per_block: u32,
    /// Shared memory the system reserves for each resident block.
    pub reserved_shared_per_block: u32,
    /// Shared memory is allocated to a block in multiples of this.
    pub shared_unit: u32,
}

/// A100 (compute capability 8.0).
pub const SM_80: ArchLimits = ArchLimits {
    arch: "sm_80",
    registers_per_sm: 65536,
    sub_partitions: 4,
    register_unit: 256,
    max_registers_per_thread: 255,
    max_warps_per_sm: 64,
    max_blocks_per_sm: 32,
    max_threads_per_block: 1024,
    shared_per_sm: 167936,
    shared_per_block: 166912,
    reserved_shared_per_block: 1024,
    shared_unit: 128,
};

/// H100 / H200 (compute capability 9.0).
pub const SM_90: ArchLimits = ArchLimits { arch: "sm_90", shared_per_sm: 233472, shared_per_block: 232448, ..SM_80 };

/// Every architecture with known limits.
pub const ARCHS: &[ArchLimits] = &[SM_80, SM_90];

/// The limits of `arch` (`sm_80`, `sm_90`); `None` for an architecture not in [`ARCHS`].
pub fn arch_limits(arch: &str) -> Option<&'static ArchLimits> {
    ARCHS.iter().find(|a| a.arch == arch)
}

/// A resource that bounds the blocks per SM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Threads: 64 warps per SM (or more than 1024 threads in a block).
    Threads,
    /// 32 blocks per SM.
    Blocks,
    /// The register file.
    Registers,
    /// Shared memory.
    SharedMemory,
}

impl Limit {
    /// `threads`, `blocks`, `registers`, `shared memory`.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Threads => "threads",
            Limit::Blocks => "blocks",
            Limit::Registers => "registers",
            Limit::SharedMemory => "shared memory",
        }
    }
}

/// Resident blocks per SM for one launch configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occupancy {
    /// Blocks one SM holds at once; 0 when a block does not fit (the launch fails).
    pub blocks_per_sm: u32,
    /// Resident warps per SM: blocks x warps per block.
    pub warps_per_sm: u32,
    /// Every resource that gives exactly `blocks_per_sm` (several when they tie), in the order
    /// threads, blocks, registers, shared memory.
    pub limited_by: Vec<Limit>,
}

impl Occupancy {
    /// The limiting resources joined with `+` (`threads+registers`).
    pub fn limits(&self) -> String {
        self.limited_by.iter().map(|l| l.name()).collect::<Vec<_>>().join("+")
    }
}

/// Resident blocks per SM of a kernel using `registers` per thread, launched with `threads`
/// per block and `shared_bytes` of shared memory per block (static + dynamic).
pub fn occupancy(arch: &ArchLimits, registers: u32, threads: u32, shared_bytes: u32) -> Occupancy {
    let warps = threads.div_ceil(32);
    let by_threads = if threads == 0 || threads > arch.max_threads_per_block { 0 } else { arch.max_warps_per_sm / warps };

    let by_registers = if registers > arch.max_registers_per_thread {
        0
    } else {
        let registers_per_warp = (registers * 32).next_multiple_of(arch.register_unit);
        // The hardware checks a block's registers as if its warps filled every sub-partition.
        let assumed_per_block = u64::from(registers_per_warp) * u64::from(warps.next_multiple_of(arch.sub_partitions));
        if assumed_per_block > u64::from(arch.registers_per_sm) {
            0
        } else {
            // No registers at all: no register limit.
            (arch.registers_per_sm / arch.sub_partitions)
                .checked_div(registers_per_warp)
                .map_or(u32::MAX, |warps_per_sub_partition| warps_per_sub_partition * arch.sub_partitions / warps.max(1))
        }
    };

    let by_shared = if shared_bytes > arch.shared_per_block {
        0
    } else {
        let allocated = (shared_bytes + arch.reserved_shared_per_block).next_multiple_of(arch.shared_unit);
        arch.shared_per_sm / allocated
    };

    let candidates =
        [(Limit::Threads, by_threads), (Limit::Blocks, arch.max_blocks_per_sm), (Limit::Registers, by_registers), (Limit::SharedMemory, by_shared)];
    let blocks = candidates.iter().map(|&(_, b)| b).min().unwrap_or(0);
    let limited_by = candidates.iter().filter(|&&(_, b)| b == blocks).map(|&(l, _)| l).collect();
    Occupancy { blocks_per_sm: blocks, warps_per_sm: blocks * warps, limited_by }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Limit::*;

    fn blocks(arch: &ArchLimits, registers: u32, threads: u32, shared: u32) -> (u32, Vec<Limit>) {
        let o = occupancy(arch, registers, threads, shared);
        assert_eq!(o.warps_per_sm, o.blocks_per_sm * threads.div_ceil(32));
        (o.blocks_per_sm, o.limited_by)
    }

    #[test]
    fn the_occupancy_calculators_textbook_cases() {
        // 256 threads x 32 registers: 8 warps a block, 64 / 8 = 8 blocks; registers allow
        // 16384 / 1024 = 16 warps per sub-partition = 64 warps = 8 blocks too (one more
        // register per thread rounds to 40 and drops it to 6 blocks).
        assert_eq!(blocks(&SM_80, 32, 256, 0), (8, vec![Threads, Registers]));
        assert_eq!(blocks(&SM_80, 33, 256, 0), (6, vec![Registers]));
        // 128 threads x 128 registers: 4096 a warp, 4 warps per sub-partition, 16 warps = 4
        // blocks (threads would allow 16).
        assert_eq!(blocks(&SM_80, 128, 128, 0), (4, vec![Registers]));
        // 32 threads x 16 registers: 64 one-warp blocks by threads, capped at 32 blocks.
        assert_eq!(blocks(&SM_90, 16, 32, 0), (32, vec![Blocks]));
        // 1024 threads x 64 registers: 2048 a warp, 8 warps per sub-partition, 32 warps = 1
        // block (threads allow 2).
        assert_eq!(blocks(&SM_90, 64, 1024, 0), (1, vec![Registers]));
    }

    #[test]
    fn registers_come_from_four_sub_partitions() {
        // 96 threads (3 warps) x 40 registers = 1280 a warp: 16384 / 1280 = 12 warps per
        // sub-partition, 48 per SM, 16 blocks; 65536 / 1280 would say 51 warps, 17 blocks.
        assert_eq!(blocks(&SM_80, 40, 96, 0), (16, vec![Registers]));
        // 170 registers (attention_bwd_f32 at 256 threads) round to 176: 5632 a warp, 2 per
        // sub-partition, 8 warps = 1 block.
        assert_eq!(blocks(&SM_90, 170, 256, 0), (1, vec![Registers]));
    }

    #[test]
    fn a_block_that_does_not_fit_gets_zero_blocks() {
        // 1024 threads x 72 registers: 2304 a warp x 32 warps = 73728 > 65536 registers.
        assert_eq!(blocks(&SM_80, 72, 1024, 0), (0, vec![Registers]));
        assert_eq!(blocks(&SM_80, 256, 32, 0), (0, vec![Registers]));
        assert_eq!(blocks(&SM_80, 32, 1025, 0), (0, vec![Threads]));
        assert_eq!(blocks(&SM_80, 32, 0, 0), (0, vec![Threads]));
        assert_eq!(blocks(&SM_90, 32, 256, 232448), (1, vec![SharedMemory]));
        assert_eq!(blocks(&SM_90, 32, 256, 232449), (0, vec![SharedMemory]));
        assert_eq!(blocks(&SM_80, 32, 256, 166913), (0, vec![SharedMemory]));
    }

    #[test]
    fn shared_memory_counts_the_reserved_kilobyte_and_128_byte_units() {
        // 48 KiB dynamic + 1024 reserved = 50176 a block: 167936 / 50176 = 3 on sm_80,
        // 233472 / 50176 = 4 on sm_90.
        assert_eq!(blocks(&SM_80, 32, 256, 49152), (3, vec![SharedMemory]));
        assert_eq!(blocks(&SM_90, 32, 256, 49152), (4, vec![SharedMemory]));
        // 32513 bytes + 1024 = 33537, allocated as 33664 (263 x 128): 4 blocks, where 33537
        // unrounded would give 5, and 32513 without the reserved kilobyte (32640) also 5.
        assert_eq!(blocks(&SM_80, 16, 32, 32513), (4, vec![SharedMemory]));
        assert_eq!(blocks(&SM_80, 16, 32, 32512), (5, vec![SharedMemory]));
        // attention_bwd at HS = 64: 70144 dynamic bytes + 1024 = 71168 (556 units): 2 blocks.
        assert_eq!(blocks(&SM_80, 64, 256, 70144), (2, vec![SharedMemory]));
        // No shared memory at all still takes the reserved 1024: 164 blocks, never the limit.
        assert_eq!(occupancy(&SM_80, 16, 64, 0).blocks_per_sm, 32);
    }

    #[test]
    fn known_architectures() {
        assert_eq!(arch_limits("sm_90").map(|a| a.shared_per_sm), Some(233472));
        assert_eq!(arch_limits("sm_80").map(|a| a.shared_per_sm), Some(167936));
        assert_eq!(arch_limits("sm_86"), None);
        assert_eq!(occupancy(&SM_80, 32, 256, 0).limits(), "threads+registers");
    }
}
