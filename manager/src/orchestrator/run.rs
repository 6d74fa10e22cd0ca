//! placeholder until StoreHandle lands
