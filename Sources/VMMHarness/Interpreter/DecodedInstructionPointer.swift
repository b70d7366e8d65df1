/// The executor works on decoded instructions in place (in the decode cache) through this
/// pointer, so no instruction is copied per step. Forwarding properties keep handler code
/// reading like the value type.
typealias DI = UnsafePointer<DecodedInstruction>

extension UnsafePointer where Pointee == DecodedInstruction {
    var opcode: UInt16 { @inline(__always) get { pointee.opcode } }
    var length: UInt8 { @inline(__always) get { pointee.length } }
    var operandSize: UInt8 { @inline(__always) get { pointee.operandSize } }
    var size: UInt8 { @inline(__always) get { pointee.size } }
    var address32: Bool { @inline(__always) get { pointee.address32 } }
    var segment: UInt8 { @inline(__always) get { pointee.segment } }
    var rep: UInt8 { @inline(__always) get { pointee.rep } }
    var mod: UInt8 { @inline(__always) get { pointee.mod } }
    var reg: UInt8 { @inline(__always) get { pointee.reg } }
    var rm: UInt8 { @inline(__always) get { pointee.rm } }
    var isMemory: Bool { @inline(__always) get { pointee.isMemory } }
    var base: UInt8 { @inline(__always) get { pointee.base } }
    var index: UInt8 { @inline(__always) get { pointee.index } }
    var scale: UInt8 { @inline(__always) get { pointee.scale } }
    var displacement: UInt32 { @inline(__always) get { pointee.displacement } }
    var immediate: UInt32 { @inline(__always) get { pointee.immediate } }
    var immediate2: UInt32 { @inline(__always) get { pointee.immediate2 } }
}
