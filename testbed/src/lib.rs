//! placeholder: the multi-host test bed (being written).
