"""Where an HEVC picture's bits lie, read from its slice segment headers without decoding.

A picture coded in several slice segments, or with wavefront parallel processing (WPP: x265's default, one CABAC
substream per row of coding tree blocks), states the byte size of each part: a slice segment's NAL unit size, and
within it the entry points of its substreams. Those sizes are exact bits per span of coding tree blocks (CTBs). The
codec sampler's `framediff` signal, which models an encoder's bits from frame differences, spends each span's own
bits over that span instead of the picture's bits over the picture (`codec_sampling_llava_onevision2`).

Only what locates the spans is parsed: the sequence and picture parameter sets up to the fields the slice segment
header depends on, and the slice segment header up to its entry points (ITU-T H.265 sections 7.3.2.2, 7.3.2.3,
7.3.6 and 7.3.7). Pictures with tiles (whose substreams are not CTB rows), and streams using extensions this parser
does not read (multi-layer, 3-D, screen content), give no spans: `picture_spans` returns None and the caller models
the picture as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .video_decoding_llava_onevision2 import nal_unit_bounds

NAL_SPS, NAL_PPS = 33, 34
IRAP_TYPES = range(16, 24)  # BLA, IDR, CRA and reserved IRAP types: their headers carry no_output_of_prior_pics_flag
IDR_TYPES = (19, 20)  # IDR pictures carry no picture order count or reference picture set
SLICE_B, SLICE_P = 0, 1
HEADER_BYTES_READ = 2048  # a slice segment header, entry points included, fits well within this


class UnsupportedStream(ValueError):
    """A header this parser cannot read (an extension it does not parse, or data that ends early)."""


# What damaged or unexpected headers raise while parsed: an index past a list the stream declared, a missing id
UNREADABLE = (UnsupportedStream, IndexError, KeyError, ValueError)


def without_emulation_prevention(data: bytes) -> tuple[bytes, list[int]]:
    """The RBSP of a NAL unit payload and the positions (in `data`) of the emulation prevention bytes removed."""
    removed, start = [], 0
    found = data.find(b"\x00\x00\x03")
    while found >= 0:
        removed.append(found + 2)
        start = found + 3
        found = data.find(b"\x00\x00\x03", start)
    if not removed:
        return data, removed
    pieces, previous = [], 0
    for position in removed:
        pieces.append(data[previous:position])
        previous = position + 1
    pieces.append(data[previous:])
    return b"".join(pieces), removed


class BitReader:
    """Big-endian bits of an RBSP, with the Exp-Golomb codes of H.265."""

    def __init__(self, rbsp: bytes):
        self.value = int.from_bytes(rbsp, "big")
        self.size = len(rbsp) * 8
        self.position = 0

    def bits(self, count: int) -> int:
        if count == 0:
            return 0
        if self.position + count > self.size:
            raise UnsupportedStream("header ends early")
        self.position += count
        return (self.value >> (self.size - self.position)) & ((1 << count) - 1)

    def flag(self) -> bool:
        return self.bits(1) == 1

    def ue(self) -> int:
        zeros = 0
        while not self.flag():
            zeros += 1
            if zeros > 31:
                raise UnsupportedStream("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)

    def skip(self, count: int) -> None:
        self.bits(count)


def ceil_log2(value: int) -> int:
    return max(0, (value - 1).bit_length())


@dataclass
class ShortTermRefSet:
    """One short-term reference picture set: the POC deltas before and after the picture, and which are used."""

    negative: list[int] = field(default_factory=list)
    negative_used: list[bool] = field(default_factory=list)
    positive: list[int] = field(default_factory=list)
    positive_used: list[bool] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.negative) + len(self.positive)

    @property
    def used(self) -> int:
        return sum(self.negative_used) + sum(self.positive_used)


def read_short_term_ref_set(reader: BitReader, index: int, sets: list[ShortTermRefSet]) -> ShortTermRefSet:
    """st_ref_pic_set(index) (7.3.7), with the derivation of its deltas when predicted from an earlier set."""
    if index != 0 and reader.flag():  # inter_ref_pic_set_prediction_flag
        delta_index = reader.ue() + 1 if index == len(sets) else 1
        sign, magnitude = reader.flag(), reader.ue() + 1
        delta = -magnitude if sign else magnitude
        source = sets[index - delta_index]
        used, use_delta = [], []
        for _ in range(source.count + 1):
            used.append(reader.flag())
            use_delta.append(True if used[-1] else reader.flag())
        return predicted_ref_set(source, delta, used, use_delta)
    result = ShortTermRefSet()
    negatives, positives = reader.ue(), reader.ue()
    poc = 0
    for _ in range(negatives):
        poc -= reader.ue() + 1
        result.negative.append(poc)
        result.negative_used.append(reader.flag())
    poc = 0
    for _ in range(positives):
        poc += reader.ue() + 1
        result.positive.append(poc)
        result.positive_used.append(reader.flag())
    return result


def predicted_ref_set(source: ShortTermRefSet, delta: int, used: list[bool], use: list[bool]) -> ShortTermRefSet:
    """A set predicted from `source` shifted by `delta` (equations 7-61 and 7-62 of H.265)."""
    result = ShortTermRefSet()
    own = len(source.negative) + len(source.positive)  # the index of the entry for `delta` itself
    for j in range(len(source.positive) - 1, -1, -1):
        shifted = source.positive[j] + delta
        if shifted < 0 and use[len(source.negative) + j]:
            result.negative.append(shifted)
            result.negative_used.append(used[len(source.negative) + j])
    if delta < 0 and use[own]:
        result.negative.append(delta)
        result.negative_used.append(used[own])
    for j, value in enumerate(source.negative):
        shifted = value + delta
        if shifted < 0 and use[j]:
            result.negative.append(shifted)
            result.negative_used.append(used[j])
    for j in range(len(source.negative) - 1, -1, -1):
        shifted = source.negative[j] + delta
        if shifted > 0 and use[j]:
            result.positive.append(shifted)
            result.positive_used.append(used[j])
    if delta > 0 and use[own]:
        result.positive.append(delta)
        result.positive_used.append(used[own])
    for j, value in enumerate(source.positive):
        shifted = value + delta
        if shifted > 0 and use[len(source.negative) + j]:
            result.positive.append(shifted)
            result.positive_used.append(used[len(source.negative) + j])
    return result


def skip_profile_tier_level(reader: BitReader, sub_layers: int) -> None:
    reader.skip(96)  # general profile (88 bits) and level (8 bits)
    present = [(reader.flag(), reader.flag()) for _ in range(sub_layers)]
    if sub_layers > 0:
        reader.skip(2 * (8 - sub_layers))
    for profile, level in present:
        reader.skip((88 if profile else 0) + (8 if level else 0))


def skip_scaling_list_data(reader: BitReader) -> None:
    for size_id in range(4):
        for _ in range(0, 6, 3 if size_id == 3 else 1):
            if not reader.flag():  # scaling_list_pred_mode_flag
                reader.ue()
                continue
            if size_id > 1:
                reader.se()
            for _ in range(min(64, 1 << (4 + (size_id << 1)))):
                reader.se()


@dataclass
class SequenceParameters:
    """What a slice segment header's syntax depends on, from one SPS."""

    chroma_array_type: int
    separate_colour_planes: bool
    width: int
    height: int
    ctb_log2: int
    poc_lsb_bits: int
    ref_sets: list[ShortTermRefSet]
    long_term_present: bool
    long_term_used: list[bool]  # used_by_curr_pic_lt_sps_flag of each candidate in the SPS
    temporal_mvp: bool
    sample_adaptive_offset: bool

    @property
    def width_ctbs(self) -> int:
        return -(-self.width // (1 << self.ctb_log2))

    @property
    def height_ctbs(self) -> int:
        return -(-self.height // (1 << self.ctb_log2))


def read_sps(rbsp: bytes) -> tuple[int, SequenceParameters]:
    reader = BitReader(rbsp)
    reader.skip(4)  # sps_video_parameter_set_id
    sub_layers = reader.bits(3)
    reader.skip(1)
    skip_profile_tier_level(reader, sub_layers)
    sps_id = reader.ue()
    chroma_format = reader.ue()
    separate = reader.flag() if chroma_format == 3 else False
    width, height = reader.ue(), reader.ue()
    if reader.flag():  # conformance_window_flag
        for _ in range(4):
            reader.ue()
    reader.ue(), reader.ue()  # bit depths
    poc_lsb_bits = reader.ue() + 4
    ordering_all = reader.flag()
    for _ in range(0 if ordering_all else sub_layers, sub_layers + 1):
        reader.ue(), reader.ue(), reader.ue()
    min_cb_log2 = reader.ue() + 3
    ctb_log2 = min_cb_log2 + reader.ue()
    for _ in range(4):  # transform block sizes and hierarchy depths
        reader.ue()
    if reader.flag() and reader.flag():  # scaling_list_enabled_flag, sps_scaling_list_data_present_flag
        skip_scaling_list_data(reader)
    reader.skip(1)  # amp_enabled_flag
    sample_adaptive_offset = reader.flag()
    if reader.flag():  # pcm_enabled_flag
        reader.skip(8)
        reader.ue(), reader.ue()
        reader.skip(1)
    ref_sets: list[ShortTermRefSet] = []
    for index in range(reader.ue()):
        ref_sets.append(read_short_term_ref_set(reader, index, ref_sets))
    long_term_present = reader.flag()
    long_term_used = []
    if long_term_present:
        for _ in range(reader.ue()):
            reader.skip(poc_lsb_bits)
            long_term_used.append(reader.flag())
    temporal_mvp = reader.flag()
    return sps_id, SequenceParameters(
        chroma_array_type=0 if separate else chroma_format,
        separate_colour_planes=separate,
        width=width,
        height=height,
        ctb_log2=ctb_log2,
        poc_lsb_bits=poc_lsb_bits,
        ref_sets=ref_sets,
        long_term_present=long_term_present,
        long_term_used=long_term_used,
        temporal_mvp=temporal_mvp,
        sample_adaptive_offset=sample_adaptive_offset,
    )


@dataclass
class PictureParameters:
    """What a slice segment header's syntax depends on, from one PPS."""

    sps_id: int
    dependent_slice_segments: bool
    output_flag_present: bool
    extra_slice_header_bits: int
    cabac_init_present: bool
    ref_idx_defaults: tuple[int, int]
    slice_chroma_qp_offsets_present: bool
    weighted_pred: bool
    weighted_bipred: bool
    tiles: bool
    entropy_coding_sync: bool
    loop_filter_across_slices: bool
    deblocking_override_enabled: bool
    deblocking_disabled: bool
    lists_modification_present: bool
    slice_header_extension_present: bool
    chroma_qp_offset_list: bool


def read_pps(rbsp: bytes) -> tuple[int, PictureParameters]:
    reader = BitReader(rbsp)
    pps_id, sps_id = reader.ue(), reader.ue()
    dependent, output_flag = reader.flag(), reader.flag()
    extra_bits = reader.bits(3)
    reader.skip(1)  # sign_data_hiding_enabled_flag
    cabac_init_present = reader.flag()
    defaults = (reader.ue() + 1, reader.ue() + 1)
    reader.se()  # init_qp_minus26
    reader.skip(1)  # constrained_intra_pred_flag
    transform_skip = reader.flag()
    if reader.flag():  # cu_qp_delta_enabled_flag
        reader.ue()
    reader.se(), reader.se()
    chroma_offsets = reader.flag()
    weighted_pred, weighted_bipred = reader.flag(), reader.flag()
    reader.skip(1)  # transquant_bypass_enabled_flag
    tiles, sync = reader.flag(), reader.flag()
    if tiles:
        columns, rows = reader.ue(), reader.ue()
        if not reader.flag():  # uniform_spacing_flag
            for _ in range(columns + rows):
                reader.ue()
        reader.skip(1)
    across_slices = reader.flag()
    override_enabled, deblocking_disabled = False, False
    if reader.flag():  # deblocking_filter_control_present_flag
        override_enabled, deblocking_disabled = reader.flag(), reader.flag()
        if not deblocking_disabled:
            reader.se(), reader.se()
    if reader.flag():  # pps_scaling_list_data_present_flag
        skip_scaling_list_data(reader)
    lists_modification = reader.flag()
    reader.ue()  # log2_parallel_merge_level_minus2
    header_extension = reader.flag()
    chroma_qp_offset_list = False
    if reader.flag():  # pps_extension_present_flag
        range_extension, multilayer, three_d, screen_content = (reader.flag() for _ in range(4))
        reader.skip(4)
        if multilayer or three_d or screen_content:
            raise UnsupportedStream("a picture parameter set extension this parser does not read")
        if range_extension:
            if transform_skip:
                reader.ue()
            reader.skip(1)  # cross_component_prediction_enabled_flag
            chroma_qp_offset_list = reader.flag()
    return pps_id, PictureParameters(
        sps_id=sps_id,
        dependent_slice_segments=dependent,
        output_flag_present=output_flag,
        extra_slice_header_bits=extra_bits,
        cabac_init_present=cabac_init_present,
        ref_idx_defaults=defaults,
        slice_chroma_qp_offsets_present=chroma_offsets,
        weighted_pred=weighted_pred,
        weighted_bipred=weighted_bipred,
        tiles=tiles,
        entropy_coding_sync=sync,
        loop_filter_across_slices=across_slices,
        deblocking_override_enabled=override_enabled,
        deblocking_disabled=deblocking_disabled,
        lists_modification_present=lists_modification,
        slice_header_extension_present=header_extension,
        chroma_qp_offset_list=chroma_qp_offset_list,
    )


@dataclass
class SliceSegment:
    """One slice segment: its first CTB (raster order), its PPS, and the byte sizes of its substreams."""

    address: int
    pps_id: int
    substream_bytes: list[int]


def skip_pred_weight_table(reader: BitReader, chroma: bool, ref_counts: tuple[int, int], lists: int) -> None:
    reader.ue()
    if chroma:
        reader.se()
    for count in ref_counts[:lists]:
        luma = [reader.flag() for _ in range(count)]
        chroma_flags = [reader.flag() for _ in range(count)] if chroma else [False] * count
        for has_luma, has_chroma in zip(luma, chroma_flags):
            if has_luma:
                reader.se(), reader.se()
            if has_chroma:
                for _ in range(4):
                    reader.se()


def read_slice_segment(nal: bytes, sps: dict, pps: dict) -> SliceSegment:
    """The slice segment header of one VCL NAL unit (2-byte NAL header included in `nal`), to its entry points."""
    nal_type = (nal[0] >> 1) & 0x3F
    payload = nal[2 : 2 + HEADER_BYTES_READ]
    rbsp, removed = without_emulation_prevention(payload)
    reader = BitReader(rbsp)
    first_in_picture = reader.flag()
    if nal_type in IRAP_TYPES:
        reader.skip(1)
    pps_id = reader.ue()
    if pps_id not in pps or pps[pps_id].sps_id not in sps:
        raise UnsupportedStream("a slice refers to a parameter set not seen")
    picture, sequence = pps[pps_id], sps[pps[pps_id].sps_id]
    dependent, address = False, 0
    if not first_in_picture:
        if picture.dependent_slice_segments:
            dependent = reader.flag()
        address = reader.bits(ceil_log2(sequence.width_ctbs * sequence.height_ctbs))
    if not dependent:
        read_independent_slice_fields(reader, nal_type, picture, sequence)
    entry_points = []
    if picture.tiles or picture.entropy_coding_sync:
        count = reader.ue()
        if count:
            length = reader.ue() + 1
            entry_points = [reader.bits(length) + 1 for _ in range(count)]
    if picture.slice_header_extension_present:
        reader.skip(8 * reader.ue())
    reader.skip(1)  # byte_alignment(): a one bit, then zeros to the byte boundary
    reader.skip(-reader.position % 8)
    header_rbsp_bytes = reader.position // 8
    # entry points count the slice data's own bytes, emulation prevention bytes included
    header_bytes = 2 + rbsp_to_nal_offset(header_rbsp_bytes, removed)
    data_bytes = len(nal) - header_bytes
    last = data_bytes - sum(entry_points)
    if last <= 0:
        raise UnsupportedStream("entry points beyond the slice data")
    return SliceSegment(address=address, pps_id=pps_id, substream_bytes=entry_points + [last])


def rbsp_to_nal_offset(rbsp_offset: int, removed: list[int]) -> int:
    """The payload byte offset of RBSP byte `rbsp_offset`: each emulation prevention byte before it adds one."""
    offset = rbsp_offset
    for position in removed:  # positions in the payload, ascending
        if position <= offset:
            offset += 1
        else:
            break
    return offset


def read_independent_slice_fields(reader: BitReader, nal_type: int, picture, sequence) -> None:
    """The fields of an independent slice segment header between its address and its entry points."""
    reader.skip(picture.extra_slice_header_bits)
    slice_type = reader.ue()
    if picture.output_flag_present:
        reader.skip(1)
    if sequence.separate_colour_planes:
        reader.skip(2)
    current_refs, temporal_mvp = 0, False
    if nal_type not in IDR_TYPES:
        reader.skip(sequence.poc_lsb_bits)
        if not reader.flag():  # short_term_ref_pic_set_sps_flag
            chosen = read_short_term_ref_set(reader, len(sequence.ref_sets), sequence.ref_sets)
        else:
            chosen = sequence.ref_sets[reader.bits(ceil_log2(len(sequence.ref_sets)))] if sequence.ref_sets else None
            if chosen is None:
                raise UnsupportedStream("a slice picks a reference set the SPS lacks")
        current_refs = chosen.used
        if sequence.long_term_present:
            current_refs += read_long_term_refs(reader, sequence)
        if sequence.temporal_mvp:
            temporal_mvp = reader.flag()
    sao_luma = sao_chroma = False
    if sequence.sample_adaptive_offset:
        sao_luma = reader.flag()
        if sequence.chroma_array_type != 0:
            sao_chroma = reader.flag()
    if slice_type in (SLICE_P, SLICE_B):
        read_inter_fields(reader, slice_type, picture, sequence, current_refs, temporal_mvp)
    reader.se()  # slice_qp_delta
    if picture.slice_chroma_qp_offsets_present:
        reader.se(), reader.se()
    if picture.chroma_qp_offset_list:
        reader.skip(1)
    deblocking_disabled = picture.deblocking_disabled
    if picture.deblocking_override_enabled and reader.flag():  # deblocking_filter_override_flag
        deblocking_disabled = reader.flag()
        if not deblocking_disabled:
            reader.se(), reader.se()
    if picture.loop_filter_across_slices and (sao_luma or sao_chroma or not deblocking_disabled):
        reader.skip(1)


def read_long_term_refs(reader: BitReader, sequence) -> int:
    """The long-term reference entries of a slice header; returns how many the picture uses."""
    from_sps = reader.ue() if sequence.long_term_used else 0
    total, used = from_sps + reader.ue(), 0
    for index in range(total):
        if index < from_sps:
            chosen = reader.bits(ceil_log2(len(sequence.long_term_used))) if len(sequence.long_term_used) > 1 else 0
            used += sequence.long_term_used[chosen]
        else:
            reader.skip(sequence.poc_lsb_bits)
            used += reader.flag()
        if reader.flag():  # delta_poc_msb_present_flag
            reader.ue()
    return used


def read_inter_fields(reader: BitReader, slice_type: int, picture, sequence, current_refs: int, temporal_mvp: bool):
    lists = 2 if slice_type == SLICE_B else 1
    counts = picture.ref_idx_defaults
    if reader.flag():  # num_ref_idx_active_override_flag
        counts = (reader.ue() + 1, reader.ue() + 1 if lists == 2 else counts[1])
    if picture.lists_modification_present and current_refs > 1:
        entry_bits = ceil_log2(current_refs)
        for count in counts[:lists]:
            if reader.flag():
                reader.skip(entry_bits * count)
    if slice_type == SLICE_B:
        reader.skip(1)  # mvd_l1_zero_flag
    if picture.cabac_init_present:
        reader.skip(1)
    if temporal_mvp:
        from_l0 = reader.flag() if slice_type == SLICE_B else True
        if counts[0 if from_l0 else 1] > 1:
            reader.ue()
    if (picture.weighted_pred and slice_type == SLICE_P) or (picture.weighted_bipred and slice_type == SLICE_B):
        skip_pred_weight_table(reader, sequence.chroma_array_type != 0, counts, lists)
    reader.ue()  # five_minus_max_num_merge_cand


@dataclass(frozen=True)
class PictureSpans:
    """Exact bits per span of one picture's CTBs: `spans` holds (first CTB in raster order, CTB count, bits)."""

    ctb_log2: int
    width_ctbs: int
    height_ctbs: int
    spans: tuple[tuple[int, int, int], ...]


def configuration_record_units(extradata: bytes) -> list[bytes]:
    """The NAL units (parameter sets) an HEVCDecoderConfigurationRecord (hvcC) carries; none for Annex B."""
    if len(extradata) < 23 or extradata[0] != 1:
        return []
    units, position = [], 23
    for _ in range(extradata[22]):
        if position + 3 > len(extradata):
            break
        count = int.from_bytes(extradata[position + 1 : position + 3], "big")
        position += 3
        for _ in range(count):
            size = int.from_bytes(extradata[position : position + 2], "big")
            units.append(extradata[position + 2 : position + 2 + size])
            position += 2 + size
    return units


class PictureSpanReader:
    """Reads `PictureSpans` from the packets of one HEVC stream, keeping the parameter sets it has seen (from the
    configuration record and in-band)."""

    def __init__(self, extradata: bytes | None, length_size: int | None):
        self.length_size = length_size
        self.sps: dict[int, SequenceParameters] = {}
        self.pps: dict[int, PictureParameters] = {}
        for unit in configuration_record_units(extradata or b""):
            self.take_parameter_set(unit)

    def take_parameter_set(self, unit: bytes) -> None:
        nal_type = (unit[0] >> 1) & 0x3F if unit else -1
        if nal_type not in (NAL_SPS, NAL_PPS):
            return
        rbsp, _ = without_emulation_prevention(unit[2:])
        try:
            if nal_type == NAL_SPS:
                sps_id, sequence = read_sps(rbsp)
                self.sps[sps_id] = sequence
            else:
                pps_id, picture = read_pps(rbsp)
                self.pps[pps_id] = picture
        except UNREADABLE:
            pass  # a slice referring to it is then unsupported

    def parameter_sets_in(self, data: bytes) -> None:
        """Take the in-band parameter sets of a packet that carries no wanted picture (a keyframe's, usually)."""
        for start, end in nal_unit_bounds(data, self.length_size):
            if (data[start] >> 1) & 0x3F in (NAL_SPS, NAL_PPS):
                self.take_parameter_set(data[start:end])

    def spans(self, data: bytes) -> PictureSpans | None:
        """The picture's spans, or None when its slices are not split into spans this reads (one slice segment
        without entry points, tiles, an unsupported header)."""
        segments = []
        for start, end in nal_unit_bounds(data, self.length_size):
            nal_type = (data[start] >> 1) & 0x3F
            if nal_type in (NAL_SPS, NAL_PPS):
                self.take_parameter_set(data[start:end])
            elif nal_type < 32:
                try:
                    segments.append(read_slice_segment(data[start:end], self.sps, self.pps))
                except UNREADABLE:  # damaged or unread: the picture is modeled as a whole
                    return None
        if not segments:
            return None
        picture = self.pps[segments[0].pps_id]
        sequence = self.sps[picture.sps_id]
        spans = segment_spans(segments, sequence, picture)
        if spans is None or len(spans) < 2:
            return None
        return PictureSpans(sequence.ctb_log2, sequence.width_ctbs, sequence.height_ctbs, tuple(spans))


def segment_spans(segments: list[SliceSegment], sequence: SequenceParameters, picture: PictureParameters):
    """(first CTB, count, bits) of each substream of the picture's slice segments, or None where they cannot be
    placed: tiles (substreams in tile scan order), or substream counts that disagree with the CTB rows."""
    if picture.tiles:
        return None
    total = sequence.width_ctbs * sequence.height_ctbs
    ordered = sorted(segments, key=lambda segment: segment.address)
    ends = [segment.address for segment in ordered[1:]] + [total]
    spans = []
    for segment, end in zip(ordered, ends):
        if end <= segment.address:
            return None
        if picture.entropy_coding_sync:
            pieces = row_pieces(segment.address, end, sequence.width_ctbs)
        else:
            pieces = [(segment.address, end - segment.address)]
        if len(pieces) != len(segment.substream_bytes):
            return None
        spans += [(first, count, 8 * size) for (first, count), size in zip(pieces, segment.substream_bytes)]
    return spans


def row_pieces(first: int, end: int, width: int) -> list[tuple[int, int]]:
    """[first, end) of a raster CTB range, cut at the ends of CTB rows: (first CTB, count) of each piece."""
    pieces = []
    while first < end:
        row_end = min(end, (first // width + 1) * width)
        pieces.append((first, row_end - first))
        first = row_end
    return pieces
